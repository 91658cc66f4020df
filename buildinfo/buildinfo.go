// Package buildinfo says which build of trireme is running: its version,
// the commit it was built from and the Go version, read from the build
// information the Go toolchain embeds (runtime/debug.ReadBuildInfo), for
// `trireme version`, the daemon's first log line and its
// trireme_build_info metric.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"sync"
)

// Version may be set at link time (-ldflags "-X
// github.com/trireme-go/trireme/buildinfo.Version=v1.2.3"); otherwise the
// module version the toolchain stamped is used.
var Version string

// Info is one build's identity.
type Info struct {
	// Version: Version, or the main module's version ("(devel)" for a build
	// of an untagged checkout without VCS information).
	Version string `json:"version"`
	// Commit is vcs.revision ("" when built without VCS information, e.g.
	// -buildvcs=false or outside a checkout), Modified vcs.modified (the
	// work tree had uncommitted changes), Time vcs.time.
	Commit   string `json:"commit"`
	Modified bool   `json:"modified"`
	Time     string `json:"commitTime,omitempty"`
	// Go is the toolchain's version (go1.26...).
	Go string `json:"go"`
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() { info = fromBuildInfo(debug.ReadBuildInfo()) })
	return info
}

func fromBuildInfo(bi *debug.BuildInfo, ok bool) Info {
	i := Info{Version: Version}
	if !ok {
		if i.Version == "" {
			i.Version = "unknown"
		}
		return i
	}
	i.Go = bi.GoVersion
	if i.Version == "" {
		i.Version = bi.Main.Version
	}
	if i.Version == "" {
		i.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Commit = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		case "vcs.time":
			i.Time = s.Value
		}
	}
	return i
}

// String is the one-line form: "trireme v1.2.3 (commit abc123…, modified)
// go1.26.0".
func (i Info) String() string {
	commit := i.Commit
	if commit == "" {
		commit = "unknown"
	}
	if i.Modified {
		commit += ", modified"
	}
	return fmt.Sprintf("trireme %s (commit %s) %s", i.Version, commit, i.Go)
}
