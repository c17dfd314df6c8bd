"""Operations: metrics, the capacity model, device set-up."""
