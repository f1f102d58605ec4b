"""Small worked examples: a user-written family (``student_t``) and a variational autoencoder
(``vae``, run as ``python -m svi_torch.examples.vae``)."""
