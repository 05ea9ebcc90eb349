package backend

import "testing"

// GroupID is the ABI's FNV-1a 64 (docs/backend-check.md): the same id as every other SDK.
func TestGroupIDIsFNV1a64(t *testing.T) {
	fnv := func(s string) uint64 {
		h := uint64(0xcbf29ce484222325)
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * 0x100000001b3
		}
		return h
	}
	for _, s := range []string{"", "a", "lobby", "ünïcødé room"} {
		if got, want := GroupID(s), fnv(s); got != want {
			t.Errorf("GroupID(%q) = %#x, want %#x", s, got, want)
		}
	}
	if GroupID("a") != 0xaf63dc4c8601ec8c {
		t.Errorf("GroupID(\"a\") = %#x", GroupID("a"))
	}
}

func TestQueryParamAndHeader(t *testing.T) {
	r := &OpenRequest{Query: "a=1&token=letmein&flag", Headers: []Header{{"authorization", []byte("Bearer x")}}}
	if v, ok := r.QueryParam("token"); !ok || v != "letmein" {
		t.Errorf("token = %q %v", v, ok)
	}
	if v, ok := r.QueryParam("flag"); !ok || v != "" {
		t.Errorf("flag = %q %v", v, ok)
	}
	if _, ok := r.QueryParam("missing"); ok {
		t.Error("missing param found")
	}
	if v, ok := r.Header("authorization"); !ok || string(v) != "Bearer x" {
		t.Errorf("authorization = %q %v", v, ok)
	}
}
