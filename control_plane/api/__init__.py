"""The REST API: dependencies (database, auth), errors in one shape, schemas and routes."""
