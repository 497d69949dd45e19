"""Streamlit glue: cached access to the core and the run the pages show. No algorithm lives here."""
