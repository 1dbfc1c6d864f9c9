"""The Streamlit chat page; it talks to the REST API only."""
