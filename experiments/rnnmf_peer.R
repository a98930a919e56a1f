# The R peer of experiments/bench_rnnmf_step.py: Algorithms 1 (MURNMF) and 3 (AURNMF)
# of Pav (2024), written here in plain R from the paper, with the dense matrix
# operations rnnmf performs per iteration (identity loss weights, no penalties).  It is
# a stand-in for the rnnmf package, which Debian does not ship; it does no more work
# per iteration than rnnmf (it skips the weight products rnnmf applies), so it can
# only flatter R.  When the rnnmf package is installed (R_LIBS), it is timed too.
#
# Usage: Rscript rnnmf_peer.R M N K ITERATIONS REPEATS SEED
# Prints one line per method: "<method> <best ms per iteration> <median ms>".

args <- as.integer(commandArgs(trailingOnly = TRUE))
m <- args[1]; n <- args[2]; k <- args[3]; iters <- args[4]; reps <- args[5]
set.seed(args[6])
Y <- matrix(runif(m * k), m, k) %*% matrix(runif(k * n), k, n)
L0 <- matrix(1 - runif(m * k), m, k)
R0 <- matrix(1 - runif(k * n), k, n)

mu_half <- function(X, numerator, GX, eps) {
  numerator <- pmin(numerator, -eps)           # eq. 19
  ok <- GX > 0
  X[ok] <- -X[ok] * numerator[ok] / GX[ok]     # eq. 14
  X
}

murnmf <- function(Y, L, R, iters, eps = 1e-7) {
  for (it in seq_len(iters)) {
    L_old <- L
    L <- mu_half(L, -tcrossprod(Y, R), L %*% tcrossprod(R), eps)
    R_old <- R
    R <- mu_half(R, -crossprod(L, Y), crossprod(L) %*% R, eps)
    steps <- c(max(abs(L - L_old)), max(abs(R - R_old)))
  }
  list(L = L, R = R, steps = steps)
}

au_half <- function(X, d, G_apply, tau) {
  GX <- G_apply(X)
  grad <- GX + d
  H <- -grad * X / ifelse(GX > 0, GX, 1)       # Lee-Seung direction, eq. 22
  H[X <= 0] <- pmax(-grad[X <= 0], 0)
  neg <- H < 0
  alpha_hat <- if (any(neg)) min(-X[neg] / H[neg]) else Inf
  GH <- G_apply(H)
  curv <- sum(H * GH)
  alpha_star <- if (curv > 0) -sum(grad * H) / curv else Inf   # eq. 24
  alpha <- min(tau * alpha_hat, alpha_star)
  if (!is.finite(alpha)) alpha <- 0
  X + alpha * H
}

aurnmf <- function(Y, L, R, iters, tau = 0.1, rate = 0.01, zero_tol = 1e-12) {
  tau_k <- tau
  for (it in seq_len(iters)) {
    tau_k <- (1 - rate) * tau_k + rate
    RRt <- tcrossprod(R)
    L <- au_half(L, -tcrossprod(Y, R), function(X) X %*% RRt, tau_k)
    LtL <- crossprod(L)
    R <- au_half(R, -crossprod(L, Y), function(X) LtL %*% X, tau_k)
    L[L <= zero_tol] <- 0
    R[R <= zero_tol] <- 0
  }
  list(L = L, R = R)
}

time_it <- function(f) {
  f(2)  # warm-up
  t <- replicate(reps, system.time(f(iters))[["elapsed"]])
  c(1e3 * min(t) / iters, 1e3 * median(t) / iters)
}
mu <- time_it(function(n) murnmf(Y, L0, R0, n))
au <- time_it(function(n) aurnmf(Y, L0, R0, n))
cat(sprintf("R-murnmf %.4f %.4f\n", mu[1], mu[2]))
cat(sprintf("R-aurnmf %.4f %.4f\n", au[1], au[2]))
# The rnnmf package itself (Pav's reference implementation), when it is installed
# (R CMD INSTALL -l DIR rnnmf-*.tar.gz, then R_LIBS=DIR): the same start, min_xstep = 0
# so that it never stops early, its own defaults otherwise.
if (requireNamespace("rnnmf", quietly = TRUE)) {
  pkg_mu <- time_it(function(n) rnnmf::murnmf(Y, L0, R0, max_iterations = n, min_xstep = 0))
  pkg_au <- time_it(function(n) rnnmf::aurnmf(Y, L0, R0, max_iterations = n, min_xstep = 0))
  cat(sprintf("rnnmf-murnmf %.4f %.4f\n", pkg_mu[1], pkg_mu[2]))
  cat(sprintf("rnnmf-aurnmf %.4f %.4f\n", pkg_au[1], pkg_au[2]))
  cat(sprintf("rnnmf-version %s\n", as.character(packageVersion("rnnmf"))))
}
blas <- tryCatch(extSoftVersion()[["BLAS"]], error = function(e) "unknown")
cat(sprintf("R-blas %s\n", if (nzchar(blas)) blas else "R's internal BLAS"))
