"""classifier: flow records -> app, category, media, method, confidence."""
