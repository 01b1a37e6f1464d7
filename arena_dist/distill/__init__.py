"""Student distillation: the loss (hard CE + KL to the teacher + cosine), soft-label joining, the QLoRA training loop."""
