/* test_json.c: what the relay reads of streaming messages, as a table. */
#include "check.h"
#include "json.h"

static void test_messages(void) {
    static const struct {
        const char *in;
        int rc;
        const char *type, *id;
        int end_of_turn;
        double audio, session, error_code;
    } cases[] = {
        { "{\"type\":\"Begin\",\"id\":\"de5d9927-73a6\",\"expires_at\":1749745373}", 0, "Begin", "de5d9927-73a6", 0, -1,
          -1, 0 },
        { "{\"type\":\"Turn\",\"turn_order\":0,\"end_of_turn\":true,\"transcript\":\"hi\",\"words\":[{\"text\":\"hi\"}]"
          "}",
          0, "Turn", "", 1, -1, -1, 0 },
        { "{\"type\":\"Turn\",\"end_of_turn\":false}", 0, "Turn", "", 0, -1, -1, 0 },
        { " {\"audio_duration_seconds\":12.5,\"session_duration_seconds\":13,\"type\":\"Termination\"} ", 0,
          "Termination", "", 0, 12.5, 13, 0 },
        { "{\"type\":\"Error\",\"error_code\":3007,\"error\":\"too fast\"}", 0, "Error", "", 0, -1, -1, 3007 },
        { "{\"type\":\"UpdateConfiguration\",\"keyterms_prompt\":[\"a\"],\"end_of_turn\":\"yes\"}", 0,
          "UpdateConfiguration", "", 0, -1, -1, 0 },
        { "{\"nested\":{\"type\":\"Begin\"}}", 0, "", "", 0, -1, -1, 0 },
        { "{\"type\":7}", 0, "", "", 0, -1, -1, 0 },
        { "{\"type\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", 0, "", "", 0, -1, -1, 0 },
        { "{\"audio_duration_seconds\":1e2}", 0, "", "", 0, 100, -1, 0 },
        { "{\"type\":\"Terminate\"", -1, "", "", 0, -1, -1, 0 },
        { "{\"type\":\"Terminate\"} x", -1, "", "", 0, -1, -1, 0 },
        { "[\"type\",\"Begin\"]", -1, "", "", 0, -1, -1, 0 },
        { "\"Terminate\"", -1, "", "", 0, -1, -1, 0 },
        { "{\"type\":\"Turn\",\"end_of_turn\":tru}", -1, "", "", 0, -1, -1, 0 },
        { "{\"audio_duration_seconds\":01}", -1, "", "", 0, -1, -1, 0 },
        { "", -1, "", "", 0, -1, -1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_message m;
        int rc = json_parse_message(cases[i].in, strlen(cases[i].in), &m);
        CHECK(rc == cases[i].rc, "case %zu: rc %d", i, rc);
        CHECK_STR(m.type, cases[i].type, cases[i].in);
        CHECK_STR(m.id, cases[i].id, cases[i].in);
        CHECK(m.end_of_turn == cases[i].end_of_turn, "case %zu: end_of_turn %d", i, m.end_of_turn);
        CHECK(m.audio_duration_seconds == cases[i].audio && m.session_duration_seconds == cases[i].session,
              "case %zu: figures %g %g", i, m.audio_duration_seconds, m.session_duration_seconds);
        CHECK(m.error_code == cases[i].error_code, "case %zu: error_code %g", i, m.error_code);
    }
}

int main(void) {
    test_messages();
    return check_report("unit.json");
}
