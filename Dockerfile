# The mtbert studio as a Hugging Face Docker Space (Streamlit on port 8501); docs/deploy.md.
# Build and run anywhere:  docker build -t mtbert . && docker run -p 8501:8501 mtbert
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# Spaces run the container as UID 1000: that user owns the app folder (runs/ is written there)
# and its home (the Hub cache)
RUN useradd --create-home --uid 1000 user \
    && mkdir /home/user/app \
    && chown user:user /home/user/app
WORKDIR /home/user/app

# CPU torch from PyTorch's CPU index first; the same pin from PyPI would pull the multi-GB CUDA build.
# The version is the one requirements.txt pins (tests/test_spaces.py keeps them equal).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The rest of requirements.txt in its own layer, so that code changes do not reinstall it;
# the editable install of mtbert itself needs the source, so it comes after the COPY.
COPY requirements.txt ./
RUN grep -v '^-e ' requirements.txt > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --chown=user:user . .
RUN pip install --no-deps -e .

USER 1000
ENV HOME=/home/user \
    MTBERT_RUNS_DIR=/home/user/app/runs

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["streamlit", "run", "app.py", "--server.port", "8501", "--server.address", "0.0.0.0"]
