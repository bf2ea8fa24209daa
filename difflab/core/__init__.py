"""Layer 1: processes, denoiser wrappers and preconditioning, step grids."""
