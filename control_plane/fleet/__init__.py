"""The devices: registration, labels and selectors, signed desired states, and the MQTT bridge that
ingests what they report."""
