# The independent reference for fedlnm_stats::meta: R's metafor (Viechtbauer), as statistics.md
# defines the meta-analysis of per-site AUCs on the logit scale. Reads a CSV (case, site, auc, var)
# and prints one CSV row per case with metafor's values; the prediction interval uses t(k - 2) and I2
# is max(0, (Q - (k - 1)) / Q), both computed from metafor's fit as the spec states them.
suppressPackageStartupMessages(library(metafor))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
cat("case,estimate,se,se_kh,ci_lower,ci_upper,prediction_lower,prediction_upper,tau2,tau2_dl,q,i2\n")
for (case in unique(d$case)) {
  s <- d[d$case == case, ]
  yi <- qlogis(s$auc)
  vi <- s$var / (s$auc * (1 - s$auc))^2
  k <- length(yi)
  control <- list(threshold = 1e-10, maxiter = 1000)
  plain <- rma(yi, vi, method = "REML", control = control)
  knha <- rma(yi, vi, method = "REML", test = "knha", control = control)
  dl <- rma(yi, vi, method = "DL")
  half <- if (k >= 3) qt(0.975, k - 2) * sqrt(knha$tau2 + knha$se^2) else NA
  q <- plain$QE
  i2 <- max(0, (q - (k - 1)) / q)
  row <- c(as.numeric(knha$beta), plain$se, knha$se, knha$ci.lb, knha$ci.ub,
           as.numeric(knha$beta) - half, as.numeric(knha$beta) + half,
           knha$tau2, dl$tau2, q, i2)
  cat(case, paste(sprintf("%.17g", row), collapse = ","), sep = ",")
  cat("\n")
}
