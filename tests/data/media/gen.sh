#!/usr/bin/env bash
# Regenerates the media codec test samples and the ffprobe facts the tests compare against.
# Needs ffmpeg/ffprobe (Debian: apt-get install -y ffmpeg) and python3. The tests never run this.
set -euo pipefail
cd "$(dirname "$0")"

BITEXACT=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1)
SRC=(-f lavfi -i "testsrc=size=160x120:rate=25:duration=3" -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=3")
ENC=(-c:v libx264 -preset veryfast -tune zerolatency -g 25 -keyint_min 25 -sc_threshold 0 -pix_fmt yuv420p -b:v 150k
     -c:a aac -b:a 32k -ac 1)

# FLV: H.264 + AAC, GOP of 25 frames: 3 s at 25 fps -> keyframes at frames 0, 25, 50.
ffmpeg -hide_banner -loglevel error -y "${SRC[@]}" "${ENC[@]}" "${BITEXACT[@]}" -f flv sample.flv
# MPEG-TS: same content, PIDs 0x100 (video) / 0x101 (audio), PMT 0x1000.
ffmpeg -hide_banner -loglevel error -y "${SRC[@]}" "${ENC[@]}" "${BITEXACT[@]}" \
  -mpegts_pmt_start_pid 0x1000 -mpegts_start_pid 0x100 -f mpegts sample.ts

# ffprobe facts: one line per demuxed packet: codec_type,pts,dts,size,pos,flags
for f in sample.flv sample.ts; do
  ffprobe -v error -show_entries packet=codec_type,pts,dts,size,pos,flags -of csv=p=0 "$f" > "$f.packets.csv"
  ffprobe -v error -show_entries stream=index,id,codec_name,codec_type -of csv=p=0 "$f" > "$f.streams.csv"
done

# RTP: packetize the FLV's H.264 stream with ffmpeg's RTP muxer and capture the RTP (port P) and
# RTCP (port P+1) datagrams on 127.0.0.1 into one file, each datagram prefixed with a 16-bit
# big-endian length (RFC 4571 framing), in arrival order. rtp.facts.txt records the per-socket counts.
python3 - <<'PY'
import socket, subprocess, select, struct, time
rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
rtp.bind(("127.0.0.1", 0))
port = rtp.getsockname()[1]
rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rtcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
rtcp.bind(("127.0.0.1", port + 1))
proc = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", "sample.flv", "-an",
                         "-c:v", "copy", "-payload_type", "96", "-ssrc", "305419896", "-pkt_size", "600",
                         "-f", "rtp", f"rtp://127.0.0.1:{port}?rtcpport={port + 1}"],
                        stdout=subprocess.DEVNULL)
out = bytearray(); n_rtp = n_rtcp = 0
deadline = None
while True:
    r, _, _ = select.select([rtp, rtcp], [], [], 0.5)
    for s in r:
        d = s.recv(65535)
        out += struct.pack(">H", len(d)) + d
        if s is rtp: n_rtp += 1
        else: n_rtcp += 1
    if proc.poll() is not None:
        if deadline is None: deadline = time.time() + 1.0
        if not r and time.time() > deadline: break
open("sample.rtp4571", "wb").write(out)
open("rtp.facts.txt", "w").write(f"rtp_packets={n_rtp}\nrtcp_packets={n_rtcp}\nssrc=305419896\npayload_type=96\n")
PY
