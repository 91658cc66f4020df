package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/trireme-go/trireme/testenv/launch"
)

// iperf3Bulk runs one iperf3 test (one stream, client to server) between
// the PUs of t: a cross-check of the load generator's bulk figure by an
// independent tool. iperf3 counts whole seconds.
func iperf3Bulk(ctx context.Context, bin string, t *Topology, port uint16, d time.Duration) (gbps float64, err error) {
	secs := max(1, int(math.Ceil(d.Seconds())))
	p := strconv.Itoa(int(port))
	srv := exec.CommandContext(ctx, bin, "--server", "--one-off", "--bind", t.Server.Addr.String(), "--port", p)
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	srvExit, err := launch.StartIn(t.Server.Netns, srv)
	if err != nil {
		return 0, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		srv.Process.Kill()
		<-srvExit.Done()
	}()

	// The server needs a moment to listen: retry while the client fails.
	var r iperfReport
	for attempt := 0; ; attempt++ {
		cli := exec.CommandContext(ctx, bin, "--client", t.Server.Addr.String(), "--port", p,
			"--time", strconv.Itoa(secs), "--json")
		cli.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var cliOut bytes.Buffer
		cli.Stdout = &cliOut
		exit, err := launch.StartIn(t.Client.Netns, cli)
		if err != nil {
			return 0, fmt.Errorf("iperf3 client: %w", err)
		}
		err = exit.Err()
		r = iperfReport{}
		if jerr := json.Unmarshal(cliOut.Bytes(), &r); jerr != nil && err == nil {
			err = fmt.Errorf("output: %w", jerr)
		}
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		if err == nil {
			break
		}
		if attempt == 20 || ctx.Err() != nil {
			return 0, fmt.Errorf("iperf3 client: %w (server: %s)", err, bytes.TrimSpace(srvOut.Bytes()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3: no throughput in its report")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// iperfReport is the part of iperf3's JSON report perf reads.
type iperfReport struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}
