"""The facts of an H.264 sequence parameter set that decide how vflow's functions filter
a source before encoding: whether it can be interlaced (field coding, or pictures
flagged as fields) and its transfer characteristics (PQ and HLG are tone-mapped).

ffprobe reports them after decoding the stream's first frames; a segment's are those
of its avcC's SPS, read here without starting a process. Anything this does not read
(HRD parameters, several SPSs) raises ValueError, and the caller probes with ffprobe.
"""
from __future__ import annotations

# ffprobe's names for H.264/ISO 23091-2 transfer characteristics (2 is "unspecified":
# ffprobe reports nothing)
TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
             9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
             14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class _Bits:
    def __init__(self, rbsp: bytes):
        self.data, self.pos = rbsp, 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("SPS ends early")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """The NAL unit's payload without its emulation prevention bytes (00 00 03)."""
    out, zeros = bytearray(), 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def facts(avcc: bytes) -> dict:
    """{"field_order": "progressive" or None, "color_transfer": name or None} from an
    avcC box's payload (its one SPS). field_order is None where the stream may hold
    interlaced pictures (field coding, or picture timing that can flag fields)."""
    if len(avcc) < 8 or avcc[0] != 1 or avcc[5] & 0x1F != 1:
        raise ValueError("avcC without exactly one SPS")
    length = int.from_bytes(avcc[6:8], "big")
    nal = avcc[8:8 + length]
    if len(nal) != length or not nal or nal[0] & 0x1F != 7:
        raise ValueError("avcC's SPS is not an SPS")
    bits = _Bits(_rbsp(nal[1:]))
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in HIGH_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)
        bits.ue()
        bits.ue()
        bits.u(1)
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma == 3 else 8):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc = bits.ue()
    if poc == 0:
        bits.ue()
    elif poc == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)
    bits.ue()  # width in macroblocks
    bits.ue()  # height in map units
    frame_only = bits.u(1)
    if not frame_only:
        bits.u(1)
    bits.u(1)  # direct_8x8_inference_flag
    if bits.u(1):  # frame_cropping_flag
        for _ in range(4):
            bits.ue()
    transfer, pic_struct = None, 0
    if bits.u(1):  # vui_parameters_present_flag
        if bits.u(1) and bits.u(8) == 255:  # aspect ratio: extended SAR
            bits.u(32)
        if bits.u(1):
            bits.u(1)
        if bits.u(1):  # video_signal_type_present_flag
            bits.u(4)
            if bits.u(1):  # colour_description_present_flag
                bits.u(8)
                transfer = bits.u(8)
                bits.u(8)
        if bits.u(1):
            bits.ue()
            bits.ue()
        if bits.u(1):  # timing_info_present_flag
            bits.u(65)
        if bits.u(1) or bits.u(1):  # NAL or VCL HRD parameters
            raise ValueError("SPS with HRD parameters")
        pic_struct = bits.u(1)
    return {"field_order": "progressive" if frame_only and not pic_struct else None,
            "color_transfer": TRANSFERS.get(transfer) if transfer is not None else None}
