//! A policy template in Zig: admits everything, scores no replica (the host's
//! default placement then applies). ABI v1, see policy_sdk/abi.py.
//! Build: llorch-policy build template.zig -o template.wasm
const std = @import("std");

var in_buf: [65536]u8 = undefined;
const admit = "{\"action\":\"admit\"}";
const no_scores = "{\"scores\":{}}";

export fn llorch_abi_version() i32 {
    return 1;
}

export fn llorch_alloc(len: i32) ?[*]u8 {
    if (len < 0 or len > in_buf.len) return null;
    return &in_buf;
}

export fn llorch_decide(hook: i32, ptr: [*]const u8, len: i32) i64 {
    const snapshot = ptr[0..@intCast(len)];
    _ = snapshot; // parse with std.json when the policy needs the snapshot
    const out: []const u8 = switch (hook) {
        1 => admit,
        2 => no_scores,
        else => return 0,
    };
    return (@as(i64, @intCast(@intFromPtr(out.ptr))) << 32) | @as(i64, @intCast(out.len));
}

comptime {
    _ = std;
}
