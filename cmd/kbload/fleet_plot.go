package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"runtime"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// machineLine names the machine in a line of output.
func machineLine() string {
	m := describeMachine(os.Args[0])
	return fmt.Sprintf("%d CPUs (%s), %s, %s", m.CPUs, m.CPUModel, m.GoVersion, runtime.GOOS+"/"+runtime.GOARCH)
}

// writeColdPlot writes an SVG of a cold start: nodes serving over time, and
// the vault's calls admitted and throttled per 10-second window.
func writeColdPlot(path string, r coldResult) error {
	serving := plot.New()
	serving.Title.Text = fmt.Sprintf("cold start of %d nodes: nodes serving (T = %s, target 1.5T+5s = %s)", r.N, fmtDur(r.T), fmtDur(r.Target))
	serving.X.Label.Text = "seconds since start"
	serving.Y.Label.Text = "nodes serving"
	pts := make(plotter.XYs, len(r.Series))
	for i, p := range r.Series {
		pts[i] = plotter.XY{X: p.At.Seconds(), Y: float64(p.Serving)}
	}
	line, err := plotter.NewLine(pts)
	if err != nil {
		return fmt.Errorf("bench-fleet: plot: %w", err)
	}
	serving.Add(line, plotter.NewGrid())

	calls := plot.New()
	calls.Title.Text = fmt.Sprintf("Key Vault calls per 10 s window (limit %d)", r.Limit)
	calls.X.Label.Text = "seconds since start (window start)"
	calls.Y.Label.Text = "calls"
	var admitted, throttled plotter.XYs
	for _, w := range r.Windows {
		x := w.Start.Sub(r.Start).Seconds()
		admitted = append(admitted, plotter.XY{X: x, Y: float64(w.Admitted)}, plotter.XY{X: x + 10, Y: float64(w.Admitted)})
		throttled = append(throttled, plotter.XY{X: x, Y: float64(w.Throttled)}, plotter.XY{X: x + 10, Y: float64(w.Throttled)})
	}
	if len(admitted) > 0 {
		la, err := plotter.NewLine(admitted)
		if err != nil {
			return fmt.Errorf("bench-fleet: plot: %w", err)
		}
		lt, err := plotter.NewLine(throttled)
		if err != nil {
			return fmt.Errorf("bench-fleet: plot: %w", err)
		}
		la.Color = plotColor(0)
		lt.Color = plotColor(1)
		lt.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		calls.Add(la, lt, plotter.NewGrid())
		calls.Legend.Add("admitted", la)
		calls.Legend.Add("throttled (429)", lt)
		calls.Legend.Top = true
	}

	img := vgsvg.New(vg.Points(800), vg.Points(720))
	dc := draw.New(img)
	plots := [][]*plot.Plot{{serving}, {calls}}
	canvases := plot.Align(plots, draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Points(10), PadY: vg.Points(20), PadTop: vg.Points(10), PadBottom: vg.Points(10), PadLeft: vg.Points(10), PadRight: vg.Points(10)}, dc)
	serving.Draw(canvases[0][0])
	calls.Draw(canvases[1][0])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("bench-fleet: %w", err)
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench-fleet: %w", err)
	}
	if _, err := img.WriteTo(out); err != nil {
		out.Close()
		return fmt.Errorf("bench-fleet: writing %s: %w", path, err)
	}
	return out.Close()
}

// plotColor is one of two distinguishable colours.
func plotColor(i int) color.Color {
	if i == 0 {
		return color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	}
	return color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
}
