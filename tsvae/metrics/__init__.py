"""The numerics of every metric: Fréchet distance, the Inception network and its weights, the
proxy classifier, the ex-post GMM and the paper's latent diagnostics (tsvae.evaluators runs them)."""
