/**
 * The command line: `fastify-clearml-keycloak doctor [--webapp-url URL] [--json]`. Exit status 0
 * when every check passes, 1 when one fails, 2 for a command line it does not understand. It prints
 * what the checks say and nothing else: no value of any variable, so never a secret or a token.
 */
import { parseArgs } from 'node:util'
import { renderText } from './render.js'
import { runDoctor, WEBAPP_URL_VARIABLES } from './run.js'

export const USAGE = `Usage: fastify-clearml-keycloak doctor [--webapp-url URL] [--json]

Checks the Keycloak single sign-on configuration in the CLEARML__ environment variables
against the live Keycloak, as the plugin reads them, and says what to change.

  --webapp-url URL  public URL of the ClearML web app, whose /callback_keycloak Keycloak
                    must accept (default: ${WEBAPP_URL_VARIABLES[0]})
  --json            print { ok, checks: [{ id, ok, message, fix? }] } instead of text
  -h, --help        show this help

Exit status: 0 when every check passes, 1 when one fails, 2 for a wrong command line.
`

export interface CliIo {
  env: Record<string, string | undefined>
  stdout: { write: (text: string) => unknown }
  stderr: { write: (text: string) => unknown }
}

/** Runs the command for `args` (without `node` and the script); resolves to the exit status. */
export async function main (args: string[], io: CliIo): Promise<number> {
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse(args)
  } catch (err) {
    // parseArgs names the option, never the value given to it.
    io.stderr.write(`${(err as Error).message}\n\n${USAGE}`)
    return 2
  }
  if (parsed.values.help === true) {
    io.stdout.write(USAGE)
    return 0
  }
  const [command, ...rest] = parsed.positionals
  if (command !== 'doctor' || rest.length > 0) {
    // The arguments themselves are not echoed: an operator may have pasted anything there.
    io.stderr.write(`${command === undefined ? 'No command given' : command !== 'doctor' ? 'Unknown command' : 'Unexpected argument after doctor'}.\n\n${USAGE}`)
    return 2
  }
  const report = await runDoctor({ env: io.env, webappUrl: parsed.values['webapp-url'] })
  io.stdout.write(parsed.values.json === true ? JSON.stringify(report, null, 2) + '\n' : renderText(report))
  return report.ok ? 0 : 1
}

function parse (args: string[]) {
  return parseArgs({
    args,
    options: { 'webapp-url': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true
  })
}
