//go:build ignore

// Command ghzhtml turns a ghz JSON report (ghz --format json) into ghz's own
// HTML report, so kbload can run ghz once, read the JSON and still keep the
// HTML for a person. It is built against tools/ghz/go.mod, whose ghz
// dependencies clash with the main module's, hence the ignore tag:
//
//	go build -modfile=tools/ghz/go.mod -o ghzhtml ./load/ghzhtml/main.go
//	ghzhtml < report.json > report.html
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/bojand/ghz/printer"
	"github.com/bojand/ghz/runner"
)

// maxReport bounds the report read: kbload strips the per-call details,
// so real reports are a few kilobytes.
const maxReport = 64 << 20

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ghzhtml:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	b, err := io.ReadAll(io.LimitReader(in, maxReport+1))
	if err != nil {
		return err
	}
	if len(b) > maxReport {
		return fmt.Errorf("report larger than %d bytes", maxReport)
	}
	var r runner.Report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("not a ghz JSON report: %v", err)
	}
	w := bufio.NewWriter(out)
	p := printer.ReportPrinter{Report: &r, Out: w}
	if err := p.Print("html"); err != nil {
		return err
	}
	return w.Flush()
}
