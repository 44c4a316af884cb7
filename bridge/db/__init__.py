"""Storage: one SQL dialect ($1 placeholders) on SQLite and PostgreSQL via mautrix.util.async_db."""
