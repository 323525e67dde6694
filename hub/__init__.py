"""The Hugging Face Hub side of the zoo: convert, publish, download (the download code itself is `zoo._hub`).

python -m hub convert --model rmt_s --org ORG RMT-S.pth out/rmt_s   # official .pth -> safetensors, config, card
python -m hub publish out/rmt_s --dry-run                           # then without --dry-run to upload
"""
