# R's NMF package on Golub (esGolub): the peer of experiments/bench_golub_survey.py.
# Usage: Rscript golub_survey_R.R RANK_LO RANK_HI NRUN
# Prints "R-seconds <s>" and one "R-rank <k> <cophenetic> <dispersion>" line per rank.
suppressMessages(library(NMF))
args <- as.integer(commandArgs(trailingOnly = TRUE))
data(esGolub)
ranks <- args[1]:args[2]
t <- system.time(res <- nmf(esGolub, ranks, nrun = args[3], method = "brunet", seed = 123456, .opt = "-p"))
cat(sprintf("R-seconds %.2f\n", t[["elapsed"]]))
for (k in ranks) {
  fit <- res$fit[[as.character(k)]]
  cat(sprintf("R-rank %d %.4f %.4f\n", k, cophcor(fit), dispersion(fit)))
}
