package node

import (
	"fmt"
	"net"
	"os"
)

// SDNotify sends state (READY=1, STOPPING=1, ...) to the service manager
// when the daemon runs under systemd with Type=notify: one datagram on the
// unix socket NOTIFY_SOCKET names ('@' for the abstract namespace). It
// reports false, and does nothing, when NOTIFY_SOCKET is not set. This is
// the whole protocol (sd_notify(3)); go-systemd is not a dependency.
func SDNotify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or @abstract name", path)
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}
