package reason

import (
	"encoding/json"
	"testing"
)

// Every code has a unique, stable name that parses back; JSON carries names.
func TestNames(t *testing.T) {
	seen := map[string]Code{}
	for c := Code(0); int(c) < Count; c++ {
		n := c.String()
		if n == "" || n == "unknown-reason" {
			t.Errorf("code %d has no name", c)
		}
		if prev, dup := seen[n]; dup {
			t.Errorf("codes %d and %d share the name %q", prev, c, n)
		}
		seen[n] = c
		if got, ok := Parse(n); !ok || got != c {
			t.Errorf("Parse(%q) = %v, %v; want %d", n, got, ok, c)
		}
		b, err := json.Marshal(struct{ R Code }{c})
		if err != nil {
			t.Fatal(err)
		}
		var back struct{ R Code }
		if err := json.Unmarshal(b, &back); err != nil || back.R != c {
			t.Errorf("JSON round trip of %q: %s -> %v (%v)", n, b, back.R, err)
		}
	}
	if Code(Count).String() != "unknown-reason" {
		t.Error("an out-of-range code must not borrow a name")
	}
	var c Code
	if err := c.UnmarshalText([]byte("no-such-reason")); err == nil {
		t.Error("an unknown name was accepted")
	}
	if MissingToken.Error() != "missing-token" {
		t.Errorf("MissingToken.Error() = %q", MissingToken.Error())
	}
}
