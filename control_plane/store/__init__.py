"""Storage: the database engine and its migrations, the tables, the content-addressed blob store
and the data directory."""
