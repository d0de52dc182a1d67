"""One router per concern: health, models, detection, classification, metrics."""
