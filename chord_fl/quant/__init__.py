"""Quantization: channels and codes, the packed quantizer, the strategy codec, allocation."""
