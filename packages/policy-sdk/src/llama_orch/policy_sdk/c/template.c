/* A policy template: admits everything and scores replicas by free slots.
 * Build: llorch-policy build template.c -o template.wasm
 * Try:   llorch-policy run template.wasm snapshot.json */
#include "llorch_policy.h"

int llorch_admission(const char *in, int len, char *out, int cap) {
    (void)in; (void)len;
    llorch_writer w = {out, cap, 0};
    llorch_put(&w, "{\"action\":\"admit\"}");
    return llorch_done(&w);
}

int llorch_placement(const char *in, int len, char *out, int cap) {
    llorch_writer w = {out, cap, 0};
    char id[128];
    llorch_put(&w, "{\"scores\":{");
    int first = 1;
    /* each replica object starts with its "replica_id" */
    for (int p = llorch_json_key(in, len, 0, "replica_id"); p >= 0;
         p = llorch_json_key(in, len, p, "replica_id")) {
        if (llorch_json_str_at(in, len, p, id, sizeof id) < 0) return -1;
        if (!first) llorch_put(&w, ",");
        first = 0;
        llorch_put(&w, "\""); llorch_put(&w, id); llorch_put(&w, "\":");
        llorch_put_int(&w, llorch_json_int(in, len, p, "free_slots", 0));
    }
    llorch_put(&w, "}}");
    return llorch_done(&w);
}
