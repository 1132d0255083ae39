"""The thin command-line edge: parse, call the core, render. No business logic here."""
