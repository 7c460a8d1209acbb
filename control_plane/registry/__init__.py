"""What can be deployed: datasets, models, their signed versions and aliases."""
