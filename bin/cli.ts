#!/usr/bin/env node
// The package's command (`npx fastify-clearml-keycloak doctor`): a shell over doctor/cli.ts, where the
// argument handling lives and is tested in-process.
import { main } from '../doctor/cli.js'

process.exitCode = await main(process.argv.slice(2), { env: process.env, stdout: process.stdout, stderr: process.stderr })
