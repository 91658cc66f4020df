package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/trireme-go/trireme/netsetup"
)

// Leftovers lists what the demo run by process pid left behind: its
// namespaces (node, hosts, trireme run's PUs), its directory, and the
// processes whose command line names that directory (daemon, probes,
// dockerd, containerd, shims). Every name a demo makes carries its PID
// (suffix), so this judges that demo only: another demo, a daemon or a
// test running beside it is not reported.
func Leftovers(pid int) []string {
	var left []string
	tag := fmt.Sprintf("%d-", pid)
	ents, _ := os.ReadDir(netsetup.NetnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), NamePrefix+tag) || strings.HasPrefix(e.Name(), runPrefix+tag) {
			left = append(left, "netns "+e.Name())
		}
	}
	dirPrefix := tmpPrefix + tag
	ents, _ = os.ReadDir(os.TempDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), dirPrefix) {
			left = append(left, "directory "+filepath.Join(os.TempDir(), e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), "/"+dirPrefix) {
			left = append(left, "process "+strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/cmdline")+": "+strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	return left
}
