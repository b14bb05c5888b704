"""Training utilities for Stable Audio 3: audio data sets, autoencoder losses, discriminators and evaluation.

Import the submodules directly (`diffusers_sa3.training.autoencoder_losses`, `.discriminators`, `.audio_data`,
`.evaluation`); nothing is imported here so that `import diffusers_sa3.training` stays light.
"""
