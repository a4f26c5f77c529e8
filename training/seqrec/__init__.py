"""Sequential track: multimodal SASRec-style encoder, CE warm-up, DPO with RoDPO negatives."""
