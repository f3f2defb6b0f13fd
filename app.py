"""mtbert studio, the entrypoint of `streamlit run app.py`: the pages, their titles and
URLs (/, /Train, /Playground, /Evaluate, /Probe, /Sweeps, /Runs). Each page's body is its own file: home.py and app_pages/."""
import streamlit as st

# no icons: Streamlit fetches a navigation entry's :material/ icon from a font CDN, and emoji need
# an emoji font the browser may not have
PAGES = [
    st.Page("home.py", title="Home", default=True),
    st.Page("app_pages/1_Train.py", title="Train", url_path="Train"),
    st.Page("app_pages/2_Playground.py", title="Playground", url_path="Playground"),
    st.Page("app_pages/4_Evaluate.py", title="Evaluate", url_path="Evaluate"),
    st.Page("app_pages/5_Probe.py", title="Probe", url_path="Probe"),
    st.Page("app_pages/6_Sweeps.py", title="Sweeps", url_path="Sweeps"),
    st.Page("app_pages/3_Runs.py", title="Runs", url_path="Runs"),
]
st.navigation(PAGES).run()
