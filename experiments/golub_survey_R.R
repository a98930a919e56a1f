# R's NMF package on Golub (esGolub): the peer of experiments/bench_golub_survey.py.
# Usage: Rscript golub_survey_R.R RANK_LO RANK_HI NRUN [SEED]
# nmf(esGolub, RANK_LO:RANK_HI, nrun=NRUN, method="brunet", seed=SEED (default 123456)),
# sequential (.opt="-p": one core).  Prints
#   "R-seconds <s>"
#   "R-rank <k> <cophenetic> <dispersion> <silhouette> <iterations median> <min> <max>"
#   "R-labels <k> <consensus clustering of the 38 samples, 1-based, space separated>"
#   "R-cells <cell type of each sample: ALL-B, ALL-T or AML>"
suppressMessages(library(NMF))
args <- as.integer(commandArgs(trailingOnly = TRUE))
seed <- if (length(args) >= 4) args[4] else 123456L
data(esGolub)
ranks <- args[1]:args[2]
t <- system.time(res <- nmf(esGolub, ranks, nrun = args[3], method = "brunet", seed = seed,
                            .opt = "-p", .callback = function(fit) niter(fit)))
cat(sprintf("R-seconds %.2f\n", t[["elapsed"]]))
cells <- ifelse(esGolub$ALL.AML == "AML", "AML", ifelse(esGolub$Cell == "T-cell", "ALL-T", "ALL-B"))
cat("R-cells", cells, "\n")
for (k in ranks) {
  fit <- res$fit[[as.character(k)]]
  its <- unlist(fit@misc$.callback)
  sil <- summary(silhouette(fit, what = "consensus"))$avg.width
  cat(sprintf("R-rank %d %.4f %.4f %.4f %d %d %d\n", k, cophcor(fit), dispersion(fit), sil,
              as.integer(median(its)), min(its), max(its)))
  cat("R-labels", k, as.integer(predict(fit, what = "consensus")), "\n")
}
