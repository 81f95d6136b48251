/**
 * The doctor's report on the demo, for README "Checking your setup": starts the demo on its usual
 * ports, runs every check against its provider with the variables the demo sets, then again with a
 * wrong client secret and an unregistered web app, and prints both reports.
 *
 *   npx tsx scripts/doctor-demo.ts
 */
import { startDemo } from '../examples/demo/server.js'
import { runDoctor } from '../doctor/run.js'
import { renderText } from '../doctor/render.js'

const demo = await startDemo({ logger: false, port: 8008, idpPort: 8180 })
try {
  process.stdout.write(renderText(await runDoctor({ env: demo.env, webappUrl: demo.url })) + '\n\n')
  const wrong = { ...demo.env, CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: '"not-the-secret"' }
  process.stdout.write(renderText(await runDoctor({ env: wrong, webappUrl: 'https://clearml.example.com' })) + '\n')
} finally {
  await demo.close()
}
