"""Result bundles: packing, signing, verifying (integrity and plausibility)."""
