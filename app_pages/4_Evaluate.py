"""Evaluate: where and why a checkpoint fails."""
import streamlit as st

st.set_page_config(page_title="Evaluate · mtbert", layout="wide")
st.title("Evaluate")
