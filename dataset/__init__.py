"""The data path: Carvana pairs, their decoding, batches, the synthetic set, int8 calibration and shards."""
