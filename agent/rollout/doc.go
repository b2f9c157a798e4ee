// Package rollout plans a rollout: the replacement of an app's running
// instances by those of one release under the app's formation. A switch
// (deploy, config change, rollback) is a rollout with every instance
// replaced; a scale or the start at boot is one that only starts what is
// missing and stops what is surplus.
//
// The package decides, from plain data, what the agent does: which
// instances the formation wants (Desired, DefaultFormation), which of
// them start (ToStart), and which running instances stop before the new
// ones start, which once they are up, and where old and new overlap on a
// shared socket (PlanStops). It is pure: no processes, no files, no
// clock, no locks; the agent's rollout.go executes the plan.
//
// It is a leaf: it imports only the standard library (deps_test.go
// fails the build otherwise), and takes Procfile types as []string
// rather than state/build's types.
//
// # A switch's steps
//
//	          plan (Desired, ToStart, PlanStops)
//	                       |
//	                       v
//	          stop-first (Plan.StopFirst)
//	every old instance that cannot overlap: bind mode, a slot
//	the formation dropped, another release beside a kept slot
//	                       |
//	                       v
//	             start the new instances
//	                       |
//	         +-------------+-------------+
//	         | Plan.StopAlong not empty  | empty
//	         v                           |
//	overlap wait (socket mode):          |
//	new ones up while the old            |
//	ones still serve the socket          |
//	         |                           |
//	         v                           |
//	stop-alongside (Plan.StopAlong)      |
//	         |                           |
//	         +-------------+-------------+
//	                       v
//	    wait up (healthy, or running for the settle time)
//	                       |
//	                       v
//	                   probation
//	                       |
//	          +------------+------------+
//	          v                         v
//	         done                   roll back
//	                 (a step failed: the previous
//	                  release is activated again and
//	                  rolled out without restart)
//
// # Modes
//
// Socket mode (a type with socket_activation): the agent owns the slot's
// listening socket and keeps it open across instances, so the new
// instance starts on it while the old one still accepts (start, then
// stop). A slot overlaps only when its new instance and every old one
// are in socket mode, the socket is open already and the old instance is
// not the one starting again (same name); the old instances then stop
// alongside, and their HTTP checks are held meanwhile (Plan.Held) so the
// new instance's answers never count against them.
//
//	socket:  old  ==========serving==========|stop
//	         new            |start====up=====serving=====>
//	                              (both accept; the kernel queues)
//
// Bind mode (every other type, and any slot that cannot overlap): the
// process binds $PORT itself, so the old one must let go of it first
// (stop, then start).
//
//	bind:    old  ====serving====|stop
//	         new                      |start====up====serving===>
package rollout
