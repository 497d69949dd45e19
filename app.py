"""Membership Leakage Explorer — the Streamlit entry point: `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="Membership Leakage Explorer", page_icon="🔍", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon="🏠", default=True),
    st.Page("pages/experiment.py", title="Experiment", icon="🧪"),
    st.Page("pages/distances.py", title="Distances", icon="📏"),
    st.Page("pages/attacks.py", title="Attacks", icon="🎯"),
    st.Page("pages/defenses.py", title="Defenses", icon="🛡️"),
    st.Page("pages/playground.py", title="Playground", icon="🎓"),
    st.Page("pages/export.py", title="Export", icon="📦"),
]

st.navigation(PAGES).run()
