"""The transfer itself: arrays in, arrays out; knows no Ray, storage or metrics."""
