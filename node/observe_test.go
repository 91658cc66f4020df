package node

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestObserveConfig: the observe section's values are checked, each bad
// one named; a relative token file is relative to the config file.
func TestObserveConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	writeFile(t, dir, "token", "0123456789abcdef0123\n")
	writeFile(t, dir, "short", "abc\n")
	base := "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"
	for _, tc := range []struct {
		name, config string
		wantErr      []string
	}{
		{"default", "", nil},
		{"ring and web", "observe: {flowRing: 100, web: {listen: '127.0.0.1:9090', tokenFile: token}}\n", nil},
		{"ring too big", "observe: {flowRing: 99999999}\n", []string{"observe.flowRing"}},
		{"ring negative", "observe: {flowRing: -1}\n", []string{"observe.flowRing"}},
		{"no token", "observe: {web: {listen: ':9090'}}\n", []string{"observe.web.tokenFile: missing"}},
		{"short token", "observe: {web: {listen: ':9090', tokenFile: short}}\n", []string{"observe.web.tokenFile", "at least 16"}},
		{"missing token file", "observe: {web: {listen: ':9090', tokenFile: nope}}\n", []string{"observe.web.tokenFile", "no such file"}},
		{"bad listen", "observe: {web: {listen: 'example.com', tokenFile: token}}\n", []string{"observe.web.listen"}},
		{"bad host", "observe: {web: {listen: 'example.com:80', tokenFile: token}}\n", []string{"observe.web.listen"}},
		{"token without listen", "observe: {web: {tokenFile: token}}\n", []string{"set without observe.web.listen"}},
		{"unknown key", "observe: {ring: 5}\n", []string{"line 4", "ring"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "config.yaml", base+tc.config)
			c, err := LoadConfig(path)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if c.Observe.Web.TokenFile != "" && c.Observe.Web.TokenFile != filepath.Join(dir, "token") {
					t.Errorf("token file not resolved: %s", c.Observe.Web.TokenFile)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
