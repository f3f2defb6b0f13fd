"""mtbert studio, the entrypoint of `streamlit run app.py`: the pages, their titles, icons and
URLs (/, /Train, /Playground, /Runs). Each page's body is its own file: home.py and app_pages/."""
import streamlit as st

# emoji, not :material/ icons: Streamlit fetches a navigation entry's material icon from a font CDN
PAGES = [
    st.Page("home.py", title="Home", icon="🏠", default=True),
    st.Page("app_pages/1_Train.py", title="Train", icon="🏋️", url_path="Train"),
    st.Page("app_pages/2_Playground.py", title="Playground", icon="🧪", url_path="Playground"),
    st.Page("app_pages/3_Runs.py", title="Runs", icon="📊", url_path="Runs"),
]
st.navigation(PAGES).run()
