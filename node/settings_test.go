package node

import (
	"encoding/json"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/dataplane"
)

// Each mode setting reads its names from the config file, rejects others
// with the field and line, and writes the name it read.
func TestConfigSettings(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	base := "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"
	for _, c := range []struct {
		text    string
		mid     dataplane.MidStream
		change  PolicyChange
		wantErr []string
	}{
		{text: "", mid: dataplane.MidStreamDrop, change: PolicyChangeKeep},
		{text: "midStream: drop\nonPolicyChange: keep\n", mid: dataplane.MidStreamDrop, change: PolicyChangeKeep},
		{text: "midStream: reset\nonPolicyChange: reset\n", mid: dataplane.MidStreamReset, change: PolicyChangeReset},
		{text: "midStream: acl\n", mid: dataplane.MidStreamAllowACL},
		{text: "midStream: allow-acl\n", mid: dataplane.MidStreamAllowACL},
		{text: "midStream: ACL\n", wantErr: []string{"midStream: line 4: column 12:", `"ACL"`}},
		{text: "midStream: ''\n", wantErr: []string{"midStream: line 4"}},
		{text: "midStream: [drop]\n", wantErr: []string{"midStream: line 4"}},
		{text: "onPolicyChange: later\n", wantErr: []string{"onPolicyChange: line 4: column 17:", `"later"`}},
		{text: "onPolicyChange: 1\n", wantErr: []string{"onPolicyChange: line 4"}},
		// A bad setting does not hide the file's other problems.
		{text: "midStream: maybe\nbridge: {name: waytoolongbridgename}\n", wantErr: []string{"midStream: line 4", "bridge.name:"}},
	} {
		path := writeFile(t, dir, "config.yaml", base+c.text)
		cfg, err := LoadConfig(path)
		if len(c.wantErr) > 0 {
			if err == nil {
				t.Errorf("%q: no error", c.text)
				continue
			}
			for _, w := range append(c.wantErr, path+": ") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q: error %q lacks %q", c.text, err, w)
				}
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.text, err)
			continue
		}
		if cfg.MidStream.MidStream != c.mid || cfg.OnPolicyChange != c.change {
			t.Errorf("%q: midStream %v onPolicyChange %v, want %v %v", c.text, cfg.MidStream, cfg.OnPolicyChange, c.mid, c.change)
		}
		out, err := yaml.Marshal(struct {
			M MidStream    `yaml:"midStream"`
			P PolicyChange `yaml:"onPolicyChange"`
		}{cfg.MidStream, cfg.OnPolicyChange})
		if want := "midStream: " + c.mid.String() + "\nonPolicyChange: " + c.change.String() + "\n"; err != nil || string(out) != want {
			t.Errorf("%q: marshalled %q, %v; want %q", c.text, out, err, want)
		}
	}
}

// The API shows a PU's state by name, and reads it back.
func TestPUStateText(t *testing.T) {
	for s, name := range map[PUState]string{PUStarting: "starting", PURunning: "running", PURestoring: "restoring", PUPaused: "paused"} {
		b, err := json.Marshal(PUInfo{State: s})
		if err != nil || !strings.Contains(string(b), `"state":"`+name+`"`) {
			t.Errorf("%v: %s, %v", s, b, err)
		}
		var back PUInfo
		if err := json.Unmarshal(b, &back); err != nil || back.State != s {
			t.Errorf("%s: read back %v, %v", b, back.State, err)
		}
	}
	var s PUState
	if err := s.UnmarshalText([]byte("unpaused")); err == nil {
		t.Error("unknown state accepted")
	}
	if PUState(9).String() != "9" || PolicyChange(9).String() != "9" {
		t.Error("unnamed values need a text form")
	}
}
