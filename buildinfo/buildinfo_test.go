package buildinfo

import (
	"runtime/debug"
	"testing"
)

// The fields come from the build settings; a link-time Version wins; a
// build without information still says something.
func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.3.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.modified", Value: "true"}, {Key: "vcs.time", Value: "2026-12-04T02:00:00Z"},
	}}
	for _, tc := range []struct {
		name, linked string
		bi           *debug.BuildInfo
		ok           bool
		want         Info
		str          string
	}{
		{"stamped", "", bi, true, Info{Version: "v0.3.0", Commit: "0123456789abcdef", Modified: true, Time: "2026-12-04T02:00:00Z", Go: "go1.26.0"},
			"trireme v0.3.0 (commit 0123456789abcdef, modified) go1.26.0"},
		{"linked version", "v9.9.9", bi, true, Info{Version: "v9.9.9", Commit: "0123456789abcdef", Modified: true, Time: "2026-12-04T02:00:00Z", Go: "go1.26.0"},
			"trireme v9.9.9 (commit 0123456789abcdef, modified) go1.26.0"},
		{"no vcs", "", &debug.BuildInfo{GoVersion: "go1.26.0"}, true, Info{Version: "(devel)", Go: "go1.26.0"}, "trireme (devel) (commit unknown) go1.26.0"},
		{"no build info", "", nil, false, Info{Version: "unknown"}, "trireme unknown (commit unknown) "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version = tc.linked
			defer func() { Version = "" }()
			got := fromBuildInfo(tc.bi, tc.ok)
			if got != tc.want || got.String() != tc.str {
				t.Errorf("got %+v %q, want %+v %q", got, got.String(), tc.want, tc.str)
			}
		})
	}
}
