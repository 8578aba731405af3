"""Loss functions as pure functions of tensors (knowledge distillation in `kd`)."""
