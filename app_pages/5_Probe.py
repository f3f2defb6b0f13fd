"""Probe: how every task's answer moves when gendered words and names are swapped."""
import streamlit as st

st.set_page_config(page_title="Probe · mtbert", layout="wide")
st.title("Probe")
